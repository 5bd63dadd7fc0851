"""The ``cagul demo`` world, apart from the library: the synthetic "fictitious people"
benchmark generator (:mod:`cagul_demo.synthetic`), the toy LLaVA builder shared by the demo,
the tests and the benchmarks (:mod:`cagul_demo.toy_vlm`, :mod:`cagul_demo.tiny_vlm`), the
demo runner (:mod:`cagul_demo.runner`) and its report and plots (:mod:`cagul_demo.report`).

Dependencies point one way: ``cagul_demo`` -> ``cagul`` -> ``cagul_kernels``; the library
imports this package only in the ``cagul demo`` command."""
