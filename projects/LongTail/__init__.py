"""Step-wise learning on smooth-tail data for long-tailed detection (Dong et al., ICCV 2023)."""
