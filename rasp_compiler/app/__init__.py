"""App layer: the `rasp-compiler` command line (`cli`), model suites (`suite`), the demo report
(`report`) and its pictures (`pictures`). Everything below is usable without it."""
