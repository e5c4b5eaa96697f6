"""The training engine behind ``tllib-jtln train`` and ``tllib-jtln test``.

It optimises, evaluates and logs; it knows nothing about optimal transport. A method
(:mod:`tllib_jtln.methods`) turns a batch into named loss terms, the engine sums them,
steps SGD, evaluates the target validation split every epoch, keeps the best checkpoint and
writes the log folder:

``config.yaml``, ``env.json``, ``metrics.jsonl``, ``checkpoints/last.pt``,
``checkpoints/best.pt``, ``cost.npy`` + ``cost.json`` + ``cost.png`` (when the method owns a
cost matrix), ``transport.png`` + ``transport.txt``, ``curves.png``, ``summary.json``.

Entry points: :func:`tllib_jtln.engine.run.train_from_flags` and
:func:`tllib_jtln.engine.run.test_from_flags`.
"""
