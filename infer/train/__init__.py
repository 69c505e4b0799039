"""Training a real model for the demo: corpus, tokenizer, data, train loop, distillation, evaluation."""
