"""faceworld: a procedural portrait world with identities, nuisance and captioned attributes (docs/faceworld.md)."""
