"""Cluster detection decides whether jax.distributed.initialize() is called."""
from kyx.distributed import cluster_detected


def test_cluster_detection():
    assert not cluster_detected({})
    assert not cluster_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert cluster_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert cluster_detected({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert cluster_detected({"TPU_WORKER_HOSTNAMES": "a,b,c,d"})
    assert not cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"})
