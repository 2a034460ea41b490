"""The lab: synthetic task data, tiny and trained checkpoints and their training, and the timing benchmark.

Nothing in the runtime or the analysis imports from here, except that a short checkpoint name
(pretrained=tiny-llava) loads its builder lazily."""
