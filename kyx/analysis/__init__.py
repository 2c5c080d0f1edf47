"""Analysis tools that read a trained kyx model: activation sites, sparse autoencoders,
AND-OR interactions."""
