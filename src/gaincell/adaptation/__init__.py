"""The staged recipe of SPEC §4 and §4.4: data, training loop and state, calibration, initialisation, transfer."""
