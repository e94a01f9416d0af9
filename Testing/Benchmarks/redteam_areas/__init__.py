"""The red-team catalogue's rows beyond ``redteam_rerun.PROBES``, one module per group of areas.

Each module defines ``PROBES`` (a list of ``redteam_rerun.Probe``) and optionally ``prepare(world)``, which builds the
module's own inputs in the run's scratch folder after ``World.build``. ``redteam_rerun.catalogue()`` gathers them.
"""
