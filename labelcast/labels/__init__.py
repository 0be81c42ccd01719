"""Label semantics: post-processing of scores, label groups, smoothing and change events."""
