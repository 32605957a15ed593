"""Tiny demo models built from configs with random weights: bases and real peft LoRAs."""
