"""GitOps health: our kinds as Flux (kstatus) and Argo CD (resource health Lua) read them."""
