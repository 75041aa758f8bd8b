"""The experiments: the shallow-water twin and the two demos of ``xensf demo``.

- :mod:`~xensf.experiments.twin`: the twin experiment's pieces (setup, truth,
  initial ensemble, observations, training runs, free run);
- :mod:`~xensf.experiments.demo_swe`: ``xensf demo``, :func:`run_twin` and the shipped
  latent model;
- :mod:`~xensf.experiments.demo_era5`: ``xensf demo-era5`` on the packaged ERA5 sample.
"""
