"""Taking a trained student out of Seed in the formats other runtimes load.

`gguf.py` writes a Llama-family student as one GGUF file for llama.cpp (and Ollama, with the
`Modelfile` that `modelfile.py` writes beside it); `gguf_vocab.py` says how Seed's tokenizers map
onto llama.cpp's. Nothing here trains, serves or uploads a model (`seed push` uploads).
"""
