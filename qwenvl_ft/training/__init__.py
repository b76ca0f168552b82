"""Training building blocks: model setup per mode, module parts, the Trainer subclass, outputs."""
