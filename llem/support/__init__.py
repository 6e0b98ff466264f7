"""What every layer may use: errors, console, locks, secrets, the reaper, SLURM's facts."""
