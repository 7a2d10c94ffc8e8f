"""One importer per public source; each turns its files into raw outcome rows."""

from router_ml.data.importers import llmrouter, mmlu_pro, routellm, routerbench, zeroeval

IMPORTERS = {
    "routellm": routellm.load,
    "routerbench": routerbench.load,
    "llmrouter": llmrouter.load,
    "zeroeval": zeroeval.load,
    "mmlu_pro": mmlu_pro.load,
}

__all__ = ["IMPORTERS"]
