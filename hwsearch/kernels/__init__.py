"""hwsearch.kernels"""
