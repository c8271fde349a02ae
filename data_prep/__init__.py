"""Corpus -> webdataset shards of precomputed features (`python -m data_prep --help`)."""
