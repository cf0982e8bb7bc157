"""Training: `loop` (`train()` and the loop), `setup` (builds a run's pieces from its config),
`step` (the loss, the optimizer step, validation), `batches` (the prefetching input pipeline),
`log` (TensorBoard, bar, lines), `book` (checkpoints, best score, early stopping, stop reasons),
`distributed`."""
