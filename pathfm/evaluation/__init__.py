"""Evaluation protocols as a library: RankMe/ODCorr and the online probe (used during
training), feature extraction, patch and slide data sets, linear probe, kNN and MIL."""
