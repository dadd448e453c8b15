"""Small models built from configs: trained tokenizers and tiny random Qwen2-Audio instances."""
