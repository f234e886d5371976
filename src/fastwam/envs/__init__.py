"""Simulated environments: MetaWorld (``fastwam.envs.metaworld``) and demonstration collection
(``fastwam.envs.collect``). Import the submodules directly; importing this package loads no simulator."""
