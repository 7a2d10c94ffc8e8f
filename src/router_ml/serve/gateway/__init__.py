"""One call from decision to answer, without HTTP: the call path (:mod:`~router_ml.serve.gateway.call`), its
errors and the response cache."""
