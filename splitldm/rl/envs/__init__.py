"""Gymnasium environments of mobile edge generation (importing registers them under ``splitldm/``)."""
