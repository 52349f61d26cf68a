"""On-demand benchmark: the gateway against a bare proxy, same load, same run (`make bench`)."""
