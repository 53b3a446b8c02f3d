set terminal pngcairo size 900,600
set output 'load-heatmap.png'
set xlabel 'expert'
set ylabel 'layer'
set xrange [-0.5:31.5]
set yrange [7.5:-0.5]
set cblabel 'token share'
set palette defined (0 'white', 1 'orange', 2 'dark-red')
plot 'load-heatmap.dat' matrix with image notitle
