"""The measurement protocol, the same for every engine and place: load, warm-up, floors, the
window, the row's parts, and the row of a job that failed."""
