"""Testing layer: random well-typed programs (`generate`), program shrinking (`shrink`), differential
compiler campaigns and regression files (`fuzz`), and the work mapper that runs campaigns and suites
on a process pool or Ray (`runner`)."""
