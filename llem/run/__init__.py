"""What the driver does around jobs: run one (check, pick the deployment, measure, write), the
sweep's session, dry runs."""
