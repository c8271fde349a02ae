"""Pretraining the identity module on data_prep shards (`python -m pretrain.train --help`)."""
