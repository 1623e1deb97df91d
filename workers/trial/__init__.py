"""One trial on a worker: the Tune trainable, its checkpoint, memory probing, the training loop,
device placement, measures and adversarial training."""
