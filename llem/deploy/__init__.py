"""Where a job's engine runs: one :class:`~llem.deploy.base.Deployment` per place, picked once per job
(:func:`llem.deploy.choose.pick`), and what outlives a job in the driver's :class:`~llem.deploy.held.Held`."""
