"""VCL scheduler: the lab database, the Para-scheduler, reservations and address allocation."""

__version__ = "0.1.0"
