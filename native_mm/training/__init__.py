"""Training: packed token shards, the DataModule, the LightningModule and ``native-mm fit``."""
