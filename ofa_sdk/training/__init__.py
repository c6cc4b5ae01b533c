"""Training (``ofa-train``): stage 0 (denoiser), stage 1 (simulator), stage 2 (extractor and
heads), export and calibration, with the training-only losses (``losses``) and perceptual term
(``perceptual``). Every hyperparameter, the schedule's and the data split's included, is in
``ofa_sdk.config``."""
