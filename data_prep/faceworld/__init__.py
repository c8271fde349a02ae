"""faceworld: a procedural portrait world with identities, nuisance and captioned attributes (docs/faceworld.md)."""

# The embedded demo's people (checkpoints/demo/, made by eval.demo; the web page draws the same when that
# folder is missing): the first test identities of eval.world's renderer seed, which nothing was tuned on
DEMO_SEED, DEMO_IDENTITIES, DEMO_PHOTOS = 777, 2, 5
