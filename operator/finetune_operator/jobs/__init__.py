"""The FineTuneJob controller: decide (admission input and output), the pods view, reconcile,
writes, the children builders, and the cycle that runs them."""
