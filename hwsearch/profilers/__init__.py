"""hwsearch.profilers"""
