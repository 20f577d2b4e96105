"""slmtrain's own datatrove PipelineSteps: model-based quality filters, offline variants, counted input/rejections."""
