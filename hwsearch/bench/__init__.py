"""hwsearch.bench"""
