"""hwsearch.predictors"""
