"""Everything that crosses between edge server and device, in stack order: the payload, the stage
protocol (`Link`, `LinkStage`), the token-merge stage, the seed codec and codec bank, channels, the
analog and digital reference schemes and the separation reference."""
