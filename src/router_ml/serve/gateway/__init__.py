"""One call from decision to answer, without HTTP: so far the response cache; the call path itself still lives in
:mod:`router_ml.serve.api.chat`."""
