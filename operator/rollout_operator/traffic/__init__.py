"""Traffic providers: one small interface (`base.TrafficRouter`), one file per provider, one factory."""
