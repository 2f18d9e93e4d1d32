"""control: the instruction set, the host registers, the controller"""
