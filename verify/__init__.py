"""verify: ground-truth circuits of compiled models and the checks that score discovered circuits."""
