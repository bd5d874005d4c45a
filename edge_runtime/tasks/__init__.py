"""Driving tasks: instructions, prompt builder, answer parser, metrics, rewards, datasets."""
