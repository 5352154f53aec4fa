"""Generation backends behind one interface (`zrl.engines.base.Engine`): `hf` (transformers) and `vllm`."""
