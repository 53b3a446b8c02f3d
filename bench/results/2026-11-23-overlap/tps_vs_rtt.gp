set title 'tokens/s vs RTT' noenhanced
set xlabel 'RTT ms'
set ylabel 'tokens/s (median, min-max)'
set key outside right
set grid
set yrange [0:*]
plot 'tps_vs_rtt.dat' index 0 with yerrorlines title 'nodes 2' noenhanced
