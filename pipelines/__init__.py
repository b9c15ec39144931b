"""pipelines: data, training, evaluation and the loraops CLI; composes lora_core and registry."""
