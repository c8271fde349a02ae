"""Training the identity world's frozen foundation models (issue 15): one file per stage, all run through
pretrain.world.common's chunked, resumable loop; the CLI and the stage registry are in __main__.py."""
