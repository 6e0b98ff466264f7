"""The vocabulary of the ``flags`` column: every doubt-flag code llem raises (llem/energy/flags.py,
llem/measure/sizing.py), with what it means in one line. The aggregate's table and ``--slo`` read these; a
test checks that every code raised in the code is here and in docs/method.md."""

FLAG_MEANINGS = {
    "short_window": "the measured window was shorter than asked, or than ~10 energy-counter steps: coarse energy",
    "shared_gpu": "another process used a metered GPU: its work and idle draw are in the energy",
    "shared_host": "other llem jobs ran on this host during the window: times and host energy are disturbed",
    "host_busy": "processes outside the job (or the hypervisor) took over a quarter of the host's CPU time",
    "mig": "MIG mode was on: energy and power are the whole GPU's, not this slice's",
    "persistence_off": "persistence mode was off: the driver may reset clocks and counters between jobs",
    "throttled": "clocks were slowed by heat or a hardware limit: slower and costlier than this GPU usually is",
    "temp_drift": "the GPU temperature drifted 10 °C or more: no thermal steady state",
    "baseline_unstable": "an idle baseline was not flat: every adjusted energy moves with it",
    "power_stale": "power readings went stale or the sampler missed samples: the window has gaps",
    "host_energy_estimated": "CPU energy is codecarbon's estimate, not a counter",
    "batch_not_filled": "fewer requests than the engine holds at once: the numbers are those of a smaller batch",
    "no_steady_state": "the engine never held its full batch steadily: every number includes ramp-up and drain",
    "requests_failed": "over 1% of the requests ended in an error (HTTP status, dropped stream, timeout): counted, "
                       "not averaged",
    "token_count_mismatch": "a server's token count disagreed with the length asked or the tokens streamed",
    "client_late": "the client (or engine) sent requests later than due (p99 lateness over its bound): a lighter load",
    "server_tokens_differ": "the server counted other generated tokens in the window than the client received: it "
                            "did other work there (another client), whose energy is in the window's",
}
