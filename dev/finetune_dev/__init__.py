"""Dev tooling, never in an image and never imported by a product package (import-linter
contract "products-never-import-dev"): the local cluster, the node agent, demos, the GPU check,
the LLaMA-Factory peer, the tiny model."""
